"""Stage 2, validate: schema and range checks per batch (pandera); a failing batch is set aside."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pandera.pandas as pa
from pandas.api import types as pdt

from flightloop import paths
from flightloop.config import ColumnRule, ValidateCfg, load_params
from tasks.ingest import BATCH_ID, safe_id

_DTYPE_TESTS = {
    "int": pdt.is_integer_dtype,
    "float": lambda s: pdt.is_float_dtype(s) or pdt.is_integer_dtype(s),
    "str": lambda s: pdt.is_object_dtype(s) or pdt.is_string_dtype(s),
    "datetime": pdt.is_datetime64_any_dtype,
    "bool": pdt.is_bool_dtype,
}
EXAMPLES = 5


Keys = dict[tuple, str]  # the key of every row already in the data -> the batch that holds it


@dataclass
class BatchReport:
    batch: str
    rows: int
    ok: bool
    errors: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)  # rows left out of the data, and why
    source: str | None = None  # the file the batch arrived as (its name may not be a valid batch id)

    @property
    def failing_columns(self) -> list[str]:
        return sorted({e["column"] for e in self.errors if e["column"]})

    def summary(self) -> str:
        dropped = "".join(f"; dropped {d['failures']} rows: {d['check']}" for d in self.dropped)
        if self.ok:
            return f"batch {self.batch}: ok ({self.rows} rows{dropped})"
        parts = [f"{e['column'] or '<table>'}: {e['check']}" for e in self.errors]
        return f"batch {self.batch}: REJECTED ({self.rows} rows{dropped}) - " + "; ".join(parts)


def unreadable_report(batch: str, problem: str, source: str | None = None) -> BatchReport:
    """The report of a file that never became a table (unreadable, empty, bad name, id taken)."""
    errors = [{"column": None, "check": problem, "failures": 1, "examples": []}]
    return BatchReport(batch=batch, rows=0, ok=False, errors=errors, source=source)


def _numeric_check(rule: ColumnRule) -> list[pa.Check]:
    checks = []
    if rule.min is not None:
        checks.append(pa.Check.ge(rule.min, error=f"value below min {rule.min}"))
    if rule.max is not None:
        checks.append(pa.Check.le(rule.max, error=f"value above max {rule.max}"))
    return checks


def _checks_for(rule: ColumnRule) -> list[pa.Check]:
    checks: list[pa.Check] = []
    if rule.dtype in ("int", "float"):
        checks += _numeric_check(rule)
        checks.append(pa.Check(lambda s: ~s.isin([float("inf"), float("-inf")]), error="infinite value"))
    if rule.allowed is not None:
        checks.append(pa.Check.isin(list(rule.allowed), error=f"value not in {list(rule.allowed)}"))
    if rule.pattern is not None:
        checks.append(pa.Check.str_matches(rule.pattern, error=f"value does not match {rule.pattern}"))
    limit = rule.max_missing
    checks.append(
        pa.Check(
            lambda s, limit=limit: s.isna().mean() <= limit,
            element_wise=False,
            ignore_na=False,
            error=f"share of missing values above {limit:.0%}",
        )
    )
    return checks


def validate_batch(frame: pd.DataFrame, cfg: ValidateCfg, batch: str = "batch") -> BatchReport:
    """Check one raw batch against the configured schema; every problem is listed, none raised."""
    errors: list[dict[str, Any]] = []

    def add(column: str | None, check: str, count: int, examples: list[Any]) -> None:
        errors.append({"column": column, "check": check, "failures": int(count), "examples": examples})

    if len(frame) < cfg.min_rows:
        add(None, f"too few rows: {len(frame)} < {cfg.min_rows}", 1, [])
    missing = [c for c in cfg.columns if c not in frame.columns]
    for col in missing:
        add(col, "required column missing", 1, [])
    extra = [c for c in frame.columns if c not in cfg.columns]
    if extra and not cfg.allow_extra_columns:
        for col in extra:
            add(col, "unknown column (not in validate.columns)", 1, [])

    typed: dict[str, pa.Column] = {}
    for col, rule in cfg.columns.items():
        if col in missing:
            continue
        series = frame[col]
        if series.isna().all() and len(series):
            add(col, "column is entirely null", len(series), [])
            continue
        if not _DTYPE_TESTS[rule.dtype](series):
            bad = series[series.notna()].head(EXAMPLES).tolist()
            add(col, f"wrong type: expected {rule.dtype}, got {series.dtype}", len(series), _plain(bad))
            continue
        typed[col] = pa.Column(checks=_checks_for(rule), nullable=True, required=True)

    if typed and len(frame):
        schema = pa.DataFrameSchema(typed, strict=False)
        try:
            schema.validate(frame[list(typed)], lazy=True)
        except pa.errors.SchemaErrors as exc:
            cases = exc.failure_cases
            for (col, check), group in cases.groupby(["column", "check"], dropna=False, sort=False):
                idx = [int(i) for i in group["index"].dropna().head(EXAMPLES)]
                rows = frame.loc[idx].to_dict(orient="records") if idx else []
                add(None if pd.isna(col) else str(col), str(check), len(group), _plain(rows))
    return BatchReport(batch=batch, rows=len(frame), ok=not errors, errors=errors)


def row_keys(frame: pd.DataFrame, key: tuple[str, ...]) -> list[tuple]:
    """Each row's key as a tuple of plain Python values (so 7 and 7.0 are the same key)."""
    return list(zip(*(frame[c].tolist() for c in key)))


def check_duplicates(
    frame: pd.DataFrame, cfg: ValidateCfg, key: tuple[str, ...], seen: Keys, batch: str = "batch"
) -> tuple[BatchReport, pd.DataFrame]:
    """Rows whose key is already in the data (`seen`) or earlier in this batch: per `cfg.duplicates`,
    the batch is rejected, or they are dropped and listed. Returns the report and the rows to keep."""
    report = BatchReport(batch=batch, rows=len(frame), ok=True)
    absent = [c for c in key if c not in frame.columns]
    if not key or absent:
        if absent:
            report.errors.append(_error(None, f"key column(s) {absent} missing (data.key)", 1, []))
            report.ok = False
        return report, frame
    keys = row_keys(frame, key)
    holder = pd.Series([seen.get(k) for k in keys], index=frame.index, dtype=object)
    earlier = holder.notna()
    within = frame.duplicated(list(key), keep="first") & ~earlier
    found = []
    if earlier.any():
        batches = sorted(set(holder[earlier]))
        shown = ", ".join(batches[:5]) + (f" and {len(batches) - 5} more" if len(batches) > 5 else "")
        check = f"duplicate key ({', '.join(key)}): rows repeat a key already in the data, in batch {shown}"
        found.append(_error(None, check, int(earlier.sum()), _examples(frame[earlier], key)))
    if within.any():
        check = f"duplicate key ({', '.join(key)}): rows repeat a key earlier in this batch"
        found.append(_error(None, check, int(within.sum()), _examples(frame[within], key)))
    if not found:
        return report, frame
    if cfg.duplicates == "reject":
        report.errors += found
        report.ok = False
        return report, frame
    kept = frame[~(earlier | within)].reset_index(drop=True)
    report.dropped += found
    if len(kept) < cfg.min_rows:
        dup = len(frame) - len(kept)
        report.errors.append(
            _error(None, f"too few rows left after dropping {dup} duplicate rows: {len(kept)} < {cfg.min_rows}", 1, [])
        )
        report.ok = False
    return report, kept


def _error(column: str | None, check: str, count: int, examples: list[Any]) -> dict[str, Any]:
    return {"column": column, "check": check, "failures": int(count), "examples": examples}


def _examples(rows: pd.DataFrame, key: tuple[str, ...]) -> list[Any]:
    return _plain(rows[list(key)].head(EXAMPLES).to_dict(orient="records"))


def _plain(values: Any) -> Any:
    """JSON-safe copy of example values."""
    return json.loads(pd.Series([values]).to_json(orient="values", date_format="iso", default_handler=str))[0]


def quarantine(report: BatchReport, source: Path, folder: Path, move: bool) -> Path:
    """Keep a rejected batch aside with its report, in its own folder inside `folder`; nothing is deleted
    or overwritten (a second rejection of the same batch id gets `<id>.2`, ...)."""
    root = folder.resolve()
    name = report.batch if BATCH_ID.match(report.batch) else safe_id(report.batch)
    dest = root / name
    for n in range(2, 10_000):
        same = dest / source.name
        if not dest.exists() or (same.is_file() and source.is_file() and _same_bytes(same, source)):
            break
        dest = root / f"{name}.{n}"
    if dest.parent != root:  # safe_id() makes this impossible; a quarantine outside data/quarantine is worse
        raise ValueError(f"quarantine folder {dest} is not inside {root}")
    dest.mkdir(parents=True, exist_ok=True)
    if source.exists() or source.is_symlink():
        (shutil.move if move else shutil.copy2)(str(source), dest / source.name)
    else:
        report.errors.append(_error(None, f"the file {source} was gone before it could be quarantined", 1, []))
    body = {**report.__dict__, "source": report.source or str(source)}
    (dest / "report.json").write_text(json.dumps(body, indent=1, default=str))
    return dest


def _same_bytes(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()


def batch_order(manifest: dict[str, dict[str, Any]], accepted: set[str]) -> list[str]:
    """The order batches claim their keys in: the source, then batches of the current data version, then
    new ones by id; so a re-delivery never displaces rows that are already in the data."""
    return sorted(manifest, key=lambda b: (manifest[b].get("origin") != "source", b not in accepted, b))


def existing_keys(folder: Path, key: tuple[str, ...]) -> Keys:
    """The key of every row in a validated data folder, with the batch holding it."""
    seen: Keys = {}
    for file in sorted(folder.glob("*.parquet")) if key else []:
        seen.update(dict.fromkeys(row_keys(pd.read_parquet(file, columns=list(key)), key), file.stem))
    return seen


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default=paths.PARAMS, type=Path)
    ap.add_argument("--raw", default=paths.RAW, type=Path)
    ap.add_argument("--out", default=paths.VALIDATED, type=Path)
    ap.add_argument("--quarantine", default=paths.QUARANTINE, type=Path)
    ap.add_argument("--report", default=paths.VALIDATION_REPORT, type=Path)
    args = ap.parse_args(argv)
    params = load_params(args.params)
    cfg, key = params.validate_, params.data.key
    manifest = json.loads((args.raw / "manifest.json").read_text())
    accepted = {f.stem for f in args.out.glob("*.parquet")} if args.out.exists() else set()

    reports, kept, seen = [], {}, {}
    for batch in batch_order(manifest, accepted):
        entry = manifest[batch]
        if "problem" in entry:
            report = unreadable_report(batch, entry["problem"], entry["origin"])
        else:
            frame = pd.read_parquet(args.raw / "batches" / f"{batch}.parquet")
            report, rows = judge(frame, cfg, key, seen, batch)
            if report.ok:
                kept[batch] = rows if len(rows) < len(frame) else None  # None: the raw file as it is
                seen.update(dict.fromkeys(row_keys(rows, key), batch) if key else {})
        reports.append(report)
        print(report.summary())
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps([r.__dict__ for r in reports], indent=1, default=str))

    rejected = [r for r in reports if not r.ok]
    if rejected:
        for r in rejected:
            origin = manifest[r.batch].get("origin", "source")
            # a batch that arrived as a file is moved out of the inbox so the next run goes on without it
            src = Path(origin) if origin != "source" else args.raw / "batches" / f"{r.batch}.parquet"
            where = quarantine(r, src, args.quarantine, move=origin != "source")
            print(f"validate: batch {r.batch} rejected, kept in {where} ({_problems(r)})", file=sys.stderr)
        sys.exit(f"validate: {len(rejected)} batch(es) failed validation; {args.out} left unchanged")

    # swap in the new validated set only when every batch passed
    tmp = Path(tempfile.mkdtemp(dir=args.out.parent if args.out.parent.exists() else None))
    for batch, rows in kept.items():
        file = args.raw / "batches" / f"{batch}.parquet"
        if rows is None:
            shutil.copy2(file, tmp / file.name)  # byte for byte: an unchanged batch keeps its hash
        else:
            rows.to_parquet(tmp / file.name, index=False)
    if (args.raw / "reference").exists():
        shutil.copytree(args.raw / "reference", tmp / "reference")
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.rename(args.out)
    print(f"validate: {len(reports)} batches passed -> {args.out}")


def judge(
    frame: pd.DataFrame, cfg: ValidateCfg, key: tuple[str, ...], seen: Keys, batch: str
) -> tuple[BatchReport, pd.DataFrame]:
    """Schema checks, then duplicate keys: one report, and the rows that go into the data."""
    try:
        report = validate_batch(frame, cfg, batch=batch)
        dup, rows = check_duplicates(frame, cfg, key, seen, batch=batch)
    except Exception as exc:  # a batch that breaks a check is a bad batch; it must not stop the others
        return unreadable_report(batch, f"validation could not run: {type(exc).__name__}: {exc}"), frame
    report.errors += dup.errors
    report.dropped = dup.dropped
    report.ok = report.ok and dup.ok
    return report, rows


def _problems(report: BatchReport) -> str:
    return "; ".join(f"{e['column'] or '<table>'}: {e['check']}" for e in report.errors)[:500]


if __name__ == "__main__":
    main()
