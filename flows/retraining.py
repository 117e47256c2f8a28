"""Retraining flow: a monitoring decision -> newly labelled rows as a new DVC data version -> training on
the decision's split -> gate -> service reload. One retrain per decision; the policy state records it.

The "retrain on drift" automation (monitoring/alerts.py) runs this deployment with the decision of the
event as its `request`; the replay runs the same step (monitoring/loop.py: run_retrain) in-process."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flightloop import paths, registry
from flightloop.config import Params, load_params
from flows.checkout import synced
from flows.common import workspace_lock
from flows.ingest import ingest
from flows.labels import SourceLabels
from flows.training import TrainingParams, training
from monitoring.loop import manual_request, newest_time, run_retrain
from monitoring.policy import RetrainRequest
from monitoring.report import StateStore, state_store


def run_name() -> str:
    """`retrain-<window end>-<trigger>`, e.g. retrain-2013-08-12-data_drift (or retrain-manual)."""
    request = flow_run.parameters.get("request")
    if not request:
        return "retrain-manual"
    request = request if isinstance(request, RetrainRequest) else RetrainRequest.model_validate(request)
    return f"retrain-{request.window_end:%Y-%m-%d}-{request.kind}"


def train_on(project: Path, overrides: dict[str, Any] | None = None):  # noqa: ANN201 - a callable for run_retrain
    """The training flow on a decision's split (and `overrides`), in a run workspace of `project`."""

    def train(split: dict[str, tuple[str, str]]) -> dict[str, Any]:
        windows = TrainingParams(
            train_window=split["train"],
            valid_window=split["valid"],
            test_window=split["test"],
            overrides=dict(overrides or {}),
        )
        return training(params=windows, project_dir=str(project))

    return train


def warm_start(project: Path, params: Params, request: RetrainRequest) -> dict[str, Any]:
    """With policy.warm_start: the champion the decision was taken against, downloaded into the project
    (artifacts/warm_start/), as the retrain's start: its preprocessing (vocabularies, scaling: categories
    new since then fall in the unknown bucket) and its weights, trained policy.warm_epochs epochs."""
    if not params.policy.warm_start or request.model_version is None:
        return {}
    from models.packaged import artifacts_of, model_dir

    dest = project / "artifacts" / "warm_start" / f"{request.model_name}-v{request.model_version}"
    if not any(dest.rglob("model.pt")):
        shutil.rmtree(dest, ignore_errors=True)
        model_dir(request.model_name, request.model_version, dest)
    epochs = params.policy.warm_epochs
    return {"train.init_from": str(artifacts_of(dest).resolve()), "train.max_epochs": epochs, "train.min_steps": 0}


def retrain_in(
    project: Path, params: Params, request: RetrainRequest, labels: SourceLabels, notify, state: Path | None = None
) -> dict[str, Any]:
    """The loop's retrain step wired to this project's flows: ingest and training run as subflows."""
    return run_retrain(
        request,
        params,
        project,
        StateStore(state) if state else state_store(project, params.register_.model_name),
        labelled=labels.raw_until,
        ingest=lambda batch: ingest(path=str(batch), project_dir=str(project)),
        train=train_on(project, warm_start(project, params, request)),
        notify=notify,
        flow_run=str(flow_run.id) if flow_run.id else None,
    )


@flow(name="retraining", flow_run_name=run_name, log_prints=True)
def retraining(request: RetrainRequest | None = None, project_dir: str | None = None) -> dict[str, Any]:
    """Retrain from a monitoring decision: its newly labelled rows become a new data version, the model
    is trained on its split, the gate decides, the service reloads when a new champion goes live.

    Args:
        request: the decision (the "retrain on drift" automation fills it in from the event); leave it
            empty to retrain now, on every label the data holds
        project_dir: the project checkout to run in (default: the runner's working directory)
    """
    logger = get_run_logger()
    project = Path(project_dir or os.getcwd()).resolve()
    params = load_params(project / paths.PARAMS)
    name = params.register_.model_name
    with workspace_lock(name), synced(project, f"retraining {flow_run.name or ''}: new data version, dvc.lock"):
        if request is None:
            newest = newest_time(project, params.data.time_column)
            if newest is None:
                raise FileNotFoundError(f"no validated data in {project / paths.VALIDATED}: run the pipeline first")
            now = newest + pd.Timedelta(hours=1) + pd.Timedelta(days=params.policy.label_delay_days)
            request = manual_request(params, now, registry.alias_version(registry.client(), name))
        if request.model_name != name:
            raise ValueError(f"the request is for model {request.model_name!r}; this project serves {name!r}")
        logger.info("retraining %s for %s (%s): %s", name, request.window_id, request.kind, request.split)
        url = registry.service_url(params.serving.host, params.serving.port)
        result = retrain_in(project, params, request, SourceLabels(params), lambda: registry.notify_service(url))
    if result.get("skipped"):
        logger.info("nothing to do: %s", result["skipped"])
    else:
        logger.info("gate: %s; %s", result["gate"].get("reason", result["gate"]), result["notified"])
    return result


def main(argv: list[str] | None = None) -> None:
    from flows.common import local_prefect

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--request", help="a decision as JSON (reports/monitoring/<window>.json's decision.request)")
    ap.add_argument("--project-dir", default=".", type=Path)
    args = ap.parse_args(argv)
    project = args.project_dir.resolve()
    request = RetrainRequest.model_validate_json(args.request) if args.request else None
    with local_prefect(project):
        out = retraining(request=request, project_dir=str(project))
    print(json.dumps({k: out.get(k) for k in ("skipped", "new_rows", "promoted", "notified")}, indent=1, default=str))


if __name__ == "__main__":
    main()
