"""Prefect flow: score a whole file (or one month of it) with the champion, straight from the registry."""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from serving.batch import score_file
from tasks.config import load_params
from tasks.paths import PARAMS


@flow(name="batch-score")
def batch_score_flow(
    source: str,
    month: str | None = None,
    out: str | None = None,
    alias: str = "champion",
    params_path: str = str(PARAMS),
) -> dict:
    """Writes data/scored/<file>[-<month>]-v<version>.parquet (or `out`)."""
    name = load_params(params_path).register_.model_name
    result = task(score_file, name="score-file")(source, name, alias, month, out)
    get_run_logger().info("%s rows scored with v%s -> %s", result["rows"], result["model_version"], result["out"])
    return result


if __name__ == "__main__":
    import sys

    batch_score_flow(*sys.argv[1:2], month=(sys.argv[2] if len(sys.argv) > 2 else None))
