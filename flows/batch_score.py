"""Prefect flow: score a whole file (or one month of it) with the champion, straight from the registry."""

from __future__ import annotations

import os
from pathlib import Path

from prefect import flow, get_run_logger, task

from flightloop import paths
from flightloop.config import load_params
from serving.batch import score_file


def run_name() -> str:
    from prefect.runtime import flow_run

    given = flow_run.parameters
    return f"score-{Path(given.get('source') or 'file').stem}" + (f"-{given['month']}" if given.get("month") else "")


@flow(name="batch-score", flow_run_name=run_name)
def batch_score_flow(
    source: str,
    month: str | None = None,
    out: str | None = None,
    alias: str = "champion",
    project_dir: str | None = None,
) -> dict:
    """Score a file with the champion; writes data/scored/<file>[-<month>]-v<version>.parquet (or `out`).

    Args:
        source: a CSV or Parquet file of feature rows (relative to the project or absolute)
        month: score only this month of it (YYYY-MM)
        out: where to write the scores (default: data/scored/...)
        alias: the registry alias whose version scores
        project_dir: the project checkout (default: the runner's working directory)
    """
    project = Path(project_dir or os.getcwd()).resolve()
    name = load_params(project / paths.PARAMS).register_.model_name
    src = Path(source) if Path(source).is_absolute() else project / source
    scored = project / paths.DATA / "scored"
    result = task(score_file, name="score-file")(src, name, alias, month, out, scored)
    get_run_logger().info("%s rows scored with v%s -> %s", result["rows"], result["model_version"], result["out"])
    return result


if __name__ == "__main__":
    import sys

    batch_score_flow(*sys.argv[1:2], month=(sys.argv[2] if len(sys.argv) > 2 else None))
