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

_DTYPE_TESTS = {
    "int": pdt.is_integer_dtype,
    "float": lambda s: pdt.is_float_dtype(s) or pdt.is_integer_dtype(s),
    "str": lambda s: pdt.is_object_dtype(s) or pdt.is_string_dtype(s),
    "datetime": pdt.is_datetime64_any_dtype,
    "bool": pdt.is_bool_dtype,
}
EXAMPLES = 5


@dataclass
class BatchReport:
    batch: str
    rows: int
    ok: bool
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failing_columns(self) -> list[str]:
        return sorted({e["column"] for e in self.errors if e["column"]})

    def summary(self) -> str:
        if self.ok:
            return f"batch {self.batch}: ok ({self.rows} rows)"
        parts = [f"{e['column'] or '<table>'}: {e['check']}" for e in self.errors]
        return f"batch {self.batch}: REJECTED ({self.rows} rows) - " + "; ".join(parts)


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


def _plain(values: Any) -> Any:
    """JSON-safe copy of example values."""
    return json.loads(pd.Series([values]).to_json(orient="values", date_format="iso", default_handler=str))[0]


def quarantine(report: BatchReport, source: Path, folder: Path, move: bool) -> Path:
    """Keep a rejected batch aside with its report; nothing is deleted."""
    dest = folder / report.batch
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / source.name
    (shutil.move if move else shutil.copy2)(str(source), target)
    (dest / "report.json").write_text(json.dumps(report.__dict__, indent=1, default=str))
    return dest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default=paths.PARAMS, type=Path)
    ap.add_argument("--raw", default=paths.RAW, type=Path)
    ap.add_argument("--out", default=paths.VALIDATED, type=Path)
    ap.add_argument("--quarantine", default=paths.QUARANTINE, type=Path)
    ap.add_argument("--report", default=paths.VALIDATION_REPORT, type=Path)
    args = ap.parse_args(argv)
    cfg = load_params(args.params).validate_
    manifest = json.loads((args.raw / "manifest.json").read_text())

    reports = []
    for file in sorted((args.raw / "batches").glob("*.parquet")):
        report = validate_batch(pd.read_parquet(file), cfg, batch=file.stem)
        reports.append(report)
        print(report.summary())
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps([r.__dict__ for r in reports], indent=1, default=str))

    rejected = [r for r in reports if not r.ok]
    if rejected:
        for r in rejected:
            origin = manifest.get(r.batch, {}).get("origin", "source")
            # a batch that arrived as a file is moved out of the inbox so the next run goes on without it
            src = Path(origin) if origin != "source" else args.raw / "batches" / f"{r.batch}.parquet"
            where = quarantine(r, src, args.quarantine, move=origin != "source")
            print(
                f"validate: batch {r.batch} rejected, kept in {where} (columns: {r.failing_columns})", file=sys.stderr
            )
        sys.exit(f"validate: {len(rejected)} batch(es) failed validation; {args.out} left unchanged")

    # swap in the new validated set only when every batch passed
    tmp = Path(tempfile.mkdtemp(dir=args.out.parent if args.out.parent.exists() else None))
    for file in sorted((args.raw / "batches").glob("*.parquet")):
        shutil.copy2(file, tmp / file.name)
    if (args.raw / "reference").exists():
        shutil.copytree(args.raw / "reference", tmp / "reference")
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.rename(args.out)
    print(f"validate: {len(reports)} batches passed -> {args.out}")


if __name__ == "__main__":
    main()
