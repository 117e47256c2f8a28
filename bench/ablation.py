"""Feature ablation: test ROC-AUC and Brier of the network and of the HistGradientBoosting baseline for the
base features, base + each feature family (tasks/features.py), and all of them.

Run: `python -m bench.ablation` (params.yaml's data window, split and training config; `--max-epochs N`
shortens training for a quick check). Each variant runs the pipeline's own stage functions in-process:
`tasks.prepare.prepare` -> `models.fit.fit` (as the train stage) -> `tasks.evaluate.evaluate` (test
metrics and the baseline). Writes reports/ablation.csv (one row per variant and seed) and prints it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from flightloop import paths
from flightloop.config import Params, load_params
from tasks.features import FAMILIES

OUT = paths.REPORTS / "ablation.csv"
NEW = {col for cols in FAMILIES.values() for col in cols}


def variants(params: Params) -> dict[str, tuple[str, ...]]:
    """Variant name -> numeric features: the configured ones without any family, plus each, plus all."""
    base = tuple(c for c in params.data.numeric if c not in NEW)
    out = {"base": base, "all": (*base, *(c for cols in FAMILIES.values() for c in cols))}
    for name, cols in FAMILIES.items():
        out[f"base+{name}"] = (*base, *cols)
    return out


def run_variant(raw, reference, params: Params) -> dict[str, float]:
    """The stages prepare -> train (fit) -> evaluate on one params variant; test metrics of both models."""
    from models.fit import fit
    from models.packaged import predict_proba
    from tasks.evaluate import evaluate
    from tasks.prepare import prepare
    from tasks.train import encode

    t0 = time.perf_counter()
    parts, pre, _ = prepare(raw, reference, params)
    frames = dict(parts)
    train = frames["train"]
    if params.train.sample_frac < 1:
        train = train.sample(frac=params.train.sample_frac, random_state=params.train.seed)
    splits = {"train": encode(train, pre, params.data.label), "valid": encode(frames["valid"], pre, params.data.label)}
    with tempfile.TemporaryDirectory() as tmp:
        module, history = fit(splits, pre.cardinalities, params.model, params.train, Path(tmp))
    probs = {name: predict_proba(module, *pre.transform(frames[name])) for name in ("valid", "test")}
    metrics = evaluate(frames, pre, probs["valid"], probs["test"], params)["metrics"]
    net, hgb = metrics["test"], metrics["baseline"]
    return {
        "net_roc_auc": round(net["roc_auc"], 4),
        "net_brier": round(net["brier"], 4),
        "hgb_roc_auc": round(hgb["roc_auc"], 4),
        "hgb_brier": round(hgb["brier"], 4),
        "epochs": len(history),
        "seconds": round(time.perf_counter() - t0),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default=paths.PARAMS, type=Path)
    ap.add_argument("--max-epochs", type=int, default=None, help="shorten training (quick check only)")
    ap.add_argument("--only", nargs="*", default=None, help="variants to run (default: all)")
    ap.add_argument("--seeds", nargs="*", type=int, default=[0], help="offsets added to train.seed")
    ap.add_argument("--all-seeds", nargs="*", type=int, default=[0, 1, 2], help="seed offsets for `all`")
    ap.add_argument("--out", default=OUT, type=Path)
    args = ap.parse_args(argv)

    import torch

    from tasks.ingest import read_source, split_batches

    torch.set_num_threads(1)
    params = load_params(args.params)
    source, reference = read_source(params.data)
    # what ingest versions: the monthly batches of data.start..data.end
    raw = pd.concat(split_batches(source, params.data.time_column, params.data.start, params.data.end).values())
    rows = []
    for name, numeric in variants(params).items():
        if args.only and name not in args.only:
            continue
        for offset in args.all_seeds if name == "all" else args.seeds:
            overrides = {
                "data.numeric": list(numeric),
                # a feature left out cannot be excluded from drift checks either
                "monitoring.exclude_features": [c for c in params.monitoring.exclude_features if c in numeric],
                "train.seed": params.train.seed + offset,
            }
            if args.max_epochs:
                overrides["train.max_epochs"] = args.max_epochs
            varied = load_params(args.params, overrides=overrides)
            row = {"variant": name, "features": len(varied.data.features), "seed": varied.train.seed}
            row.update(run_variant(raw, reference, varied))
            row["max_epochs"] = varied.train.max_epochs
            rows.append(row)
            print(row, flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_csv(args.out, index=False)  # after each variant: a long run keeps its rows
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    spread = table.groupby("variant", sort=False)[["net_roc_auc", "net_brier", "hgb_roc_auc", "hgb_brier"]]
    print("mean (min-max) over seeds:")
    print(spread.agg(lambda v: f"{v.mean():.4f} ({v.min():.4f}-{v.max():.4f})").to_string())


if __name__ == "__main__":
    main()
