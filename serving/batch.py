"""Batch scoring with the champion, not through HTTP: a whole file (or one month of it) -> Parquet.

python -m serving.batch data/prepared/test.parquet [--month 2013-06] [--out data/scored/...]
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flightloop import paths
from flightloop.config import load_params

SCORED = paths.DATA / "scored"


def score_frame(frame: pd.DataFrame, scorer, version: int, chunk_rows: int = 50_000) -> pd.DataFrame:
    """Pure: key columns (those present) + score, label_pred, model_version for every row."""
    meta = scorer.meta
    scores = (
        np.concatenate([scorer.predict_proba(frame.iloc[i : i + chunk_rows]) for i in range(0, len(frame), chunk_rows)])
        if len(frame)
        else np.zeros(0)
    )
    keep = [c for c in dict.fromkeys([*meta.get("key", []), meta.get("time_column", "")]) if c in frame.columns]
    out = frame[keep].reset_index(drop=True).copy()
    out["score"] = scores
    out["label_pred"] = (scores >= float(meta["threshold"])).astype("int64")
    out["model_version"] = int(version)
    return out


def select_month(frame: pd.DataFrame, time_column: str, month: str | None) -> pd.DataFrame:
    if month is None:
        return frame
    stamps = pd.to_datetime(frame[time_column])
    return frame[stamps.dt.strftime("%Y-%m") == month]


def read_table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)


def score_file(
    source: Path | str,
    name: str,
    alias: str = "champion",
    month: str | None = None,
    out: Path | str | None = None,
    out_dir: Path = SCORED,
) -> dict[str, Any]:
    """Score `source` with `models:/<name>@<alias>` and write `data/scored/<stem>[-<month>]-v<version>.parquet`."""
    from flightloop import registry
    from models.packaged import load_scorer

    source = Path(source)
    version = registry.alias_version(registry.client(), name, alias)
    if version is None:
        raise LookupError(f"models:/{name}@{alias} does not exist")
    with tempfile.TemporaryDirectory() as tmp:
        scorer = load_scorer(name, version, tmp)
    frame = read_table(source)
    frame = select_month(frame, scorer.meta.get("time_column", "time_hour"), month)
    scored = score_frame(frame, scorer, version)
    out = Path(out) if out else out_dir / f"{source.stem}{'-' + month if month else ''}-v{version}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    scored.assign(scored_at=datetime.now(timezone.utc)).to_parquet(out, index=False)
    return {
        "source": str(source),
        "month": month,
        "rows": len(scored),
        "model_version": version,
        "out": str(out),
        "positive_rate": float(scored["label_pred"].mean()) if len(scored) else float("nan"),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path)
    ap.add_argument("--month", help="only rows of this month (YYYY-MM) of the time column")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--alias", default="champion")
    ap.add_argument("--params", default=paths.PARAMS, type=Path)
    args = ap.parse_args(argv)
    params = load_params(args.params)
    result = score_file(args.source, params.register_.model_name, args.alias, args.month, args.out)
    print(f"batch: {result['rows']} rows scored with v{result['model_version']} -> {result['out']}")


if __name__ == "__main__":
    main()
