"""Ingest flow: take one new batch (a month of the source, or a CSV/Parquet file), validate it, and
version it with DVC (ingest + validate stages), or reject it into quarantine with its report."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flightloop import paths
from flightloop.config import Params, load_params
from flows import dvc_stages
from flows.common import flow_run_tags, local_prefect, run_stage, workspace_lock
from tasks.ingest import read_source, read_table, split_batches
from tasks.validate import BatchReport, quarantine, validate_batch

VERSIONING_STAGES = ("ingest", "validate")  # the dvc.yaml stages that turn data/incoming into a data version


class BatchRejected(RuntimeError):
    """The batch failed validation; it is in quarantine and the existing data is untouched."""


class AlreadyIngested(ValueError):
    """The batch id is already part of the data."""


def ingested_batches(project: Path, params: Params) -> dict[str, str]:
    """Batch ids already in the data, with where they come from."""
    known: dict[str, str] = {}
    start, end = params.data.start, params.data.end
    for month in pd.period_range(start, end, freq="M").strftime("%Y-%m"):
        known[month] = f"the source window data.start..data.end ({start}..{end})"
    manifest = project / paths.RAW / "manifest.json"
    if manifest.exists():
        for batch_id in json.loads(manifest.read_text()):
            known.setdefault(batch_id, str(paths.RAW / "manifest.json"))
    inbox = project / paths.INCOMING
    for path in inbox.glob("*") if inbox.exists() else []:
        if path.suffix in (".parquet", ".csv"):
            known.setdefault(path.stem, str(paths.INCOMING / path.name))
    return known


@task(cache_policy=NO_CACHE)
def load_batch(params: Params, month: str | None, path: str | None) -> tuple[str, pd.DataFrame]:
    """The new batch and its id: a month cut from the configured source, or a file as it arrived."""
    if bool(month) == bool(path):
        raise ValueError("give exactly one of `month` (YYYY-MM of the source) or `path` (a CSV/Parquet file)")
    if path:
        file = Path(path)
        return file.stem, read_table(file)
    frame, _ = read_source(params.data)
    batches = split_batches(frame, params.data.time_column, month, month)
    if month not in batches:
        raise ValueError(f"the source {params.data.source!r} has no rows for month {month}")
    return month, batches[month]


@task(cache_policy=NO_CACHE)
def check_batch(params: Params, batch_id: str, frame: pd.DataFrame) -> BatchReport:
    report = validate_batch(frame, params.validate_, batch=batch_id)
    get_run_logger().info(report.summary())
    return report


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
    with workspace_lock(params.register_.model_name):
        return _ingest(project, params, month, path)


def _ingest(project: Path, params: Params, month: str | None, path: str | None) -> dict[str, Any]:
    logger = get_run_logger()
    if path and not Path(path).is_absolute():
        path = str(project / path)
    batch_id, frame = load_batch(params, month, path)
    known = ingested_batches(project, params)
    if batch_id in known:
        raise AlreadyIngested(f"batch {batch_id} is already ingested (in {known[batch_id]}); nothing was changed")

    report = check_batch(params, batch_id, frame)
    if not report.ok:
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(path) if path else Path(tmp) / f"{batch_id}.parquet"
            if not path:
                frame.to_parquet(source, index=False)
            where = quarantine(report, source, project / paths.QUARANTINE, move=not path)
        create_table_artifact(
            key="batch-validation",
            table=report_table(report),
            description=f"batch {batch_id} REJECTED ({report.rows} rows); kept in {where}",
        )
        raise BatchRejected(f"{report.summary()}. Kept in {where}; data/raw and data/validated are unchanged.")

    target = project / paths.INCOMING / f"{batch_id}.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(target, index=False)
    logger.info("batch %s (%d rows) passed validation -> %s", batch_id, len(frame), target)
    tags = flow_run_tags()
    stages = {s: run_stage(s, str(project), tags) for s in dvc_stages.stage_order(project) if s in VERSIONING_STAGES}
    result = {
        "batch_id": batch_id,
        "rows": len(frame),
        "stages": stages,
        "raw_hash": dvc_stages.locked_hash(project, str(paths.RAW)),
        "validated_hash": dvc_stages.locked_hash(project, str(paths.VALIDATED)),
    }
    create_markdown_artifact(
        key="batch-ingested",
        markdown=f"# Batch {batch_id} ingested\n\n{len(frame)} rows passed validation.\n\n"
        f"New data version (`data/validated`): `{result['validated_hash']}`\n\n"
        "Run the training deployment to train on it.",
    )
    return result


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
