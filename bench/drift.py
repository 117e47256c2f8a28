"""Time per monitoring window at 1x, 4x and 10x a month's rows; writes reports/bench_drift.json.

The current window is the champion's test month (data/prepared/test.parquet) repeated k times; the
reference is data/prepared/train.parquet. Reported: the summary (drift + score drift + quality +
performance: what the policy needs) and, separately, the Evidently HTML report built from samples.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

from flightloop import paths
from flightloop.config import load_params
from monitoring.drift import build_reference, drift_report, summarize_window


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default=paths.PARAMS, type=Path)
    ap.add_argument("--prepared", default=paths.PREPARED, type=Path)
    ap.add_argument("--sizes", default="1,4,10")
    ap.add_argument("--repeat", default=3, type=int)
    ap.add_argument("--out", default=paths.REPORTS / "bench_drift.json", type=Path)
    args = ap.parse_args(argv)
    params = load_params(args.params)
    data, mcfg, pcfg = params.data, params.monitoring, params.policy
    train = pd.read_parquet(args.prepared / "train.parquet")
    month = pd.read_parquet(args.prepared / "test.parquet")
    rng = np.random.default_rng(0)  # stand-in scores: the bench times the checks, not the model
    train["score"], month["score"] = rng.beta(2, 4, len(train)), rng.beta(2, 4, len(month))

    t0 = time.perf_counter()
    reference = build_reference(train, data, mcfg)
    ref_s = time.perf_counter() - t0
    end = month[data.time_column].max()
    results = []
    for k in (int(s) for s in args.sizes.split(",")):
        window = pd.concat([month] * k, ignore_index=True)
        window["flight"] = window["flight"] + np.repeat(np.arange(k), len(month)) * 100_000  # unique keys
        labels = window[[*data.key, data.time_column, data.label]]
        times = []
        for _ in range(args.repeat + 1):  # the first run also pays imports; reported apart
            t = time.perf_counter()
            summary = summarize_window(
                window,
                reference,
                data,
                mcfg,
                window_id=f"{k}x",
                start=month[data.time_column].min(),
                end=end,
                labels=labels,
                label_delay_days=pcfg.label_delay_days,
                champion_metrics={"roc_auc": 0.74},
            )
            times.append(time.perf_counter() - t)
        t = time.perf_counter()
        drift_report(window, reference, mcfg)
        report_s = time.perf_counter() - t
        row = {
            "multiple": k,
            "rows": len(window),
            "columns": len(data.features) + 1,
            "rows_used_for_drift": summary.rows_used,
            "summary_first_s": round(times[0], 3),
            "summary_median_s": round(float(np.median(times[1:])), 3),
            "summary_max_s": round(max(times[1:]), 3),
            "evidently_report_s": round(report_s, 3),
            "drift_share": round(summary.drift.share, 3),
        }
        results.append(row)
        print(json.dumps(row))
    out = {
        "machine": f"{platform.machine()} {platform.processor() or ''} cpus={__import__('os').cpu_count()}".strip(),
        "reference_rows": len(train),
        "reference_sample": mcfg.reference_max_rows,
        "current_max_rows": mcfg.current_max_rows,
        "report_max_rows": mcfg.report_max_rows,
        "build_reference_s": round(ref_s, 3),
        "windows": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
