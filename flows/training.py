"""Training flow: the dvc.yaml stages in DAG order, one Prefect task each, run through DVC.

`dvc repro` and this flow are the same pipeline with the same record (one dvc.lock, one set of outputs).
A run's overrides live with the run (its run workspace and MLflow run), never in the tracked params.yaml."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict, Field

from flightloop import paths, tracking
from flightloop.config import ParamsError, cli_overrides, load_params
from flows import dvc_stages
from flows.checkout import synced
from flows.common import add_flow_run_tags, flow_run_tags, local_prefect, run_stage, workspace_lock
from flows.workspace import run_workspace

GATE_REPORT = paths.REPORTS / "gate.json"  # written by a `gate` stage when one is in dvc.yaml


class TrainingParams(BaseModel):
    """Overrides of params.yaml for one run; unset fields keep the file's values."""

    model_config = ConfigDict(extra="forbid")

    max_epochs: int | None = Field(None, description="train.max_epochs")
    lr: float | None = Field(None, description="train.lr")
    sample_frac: float | None = Field(None, description="train.sample_frac (fraction of training rows)")
    data_end: str | None = Field(None, description="data.end, last month ingested (YYYY-MM)")
    train_window: tuple[str, str] | None = Field(None, description="split.train, inclusive months")
    valid_window: tuple[str, str] | None = Field(None, description="split.valid, inclusive months")
    test_window: tuple[str, str] | None = Field(None, description="split.test, inclusive months")
    overrides: dict[str, Any] = Field(default_factory=dict, description='any other key, e.g. {"model.dropout": 0.3}')

    def as_overrides(self) -> dict[str, Any]:
        named = {
            "train.max_epochs": self.max_epochs,
            "train.lr": self.lr,
            "train.sample_frac": self.sample_frac,
            "data.end": self.data_end,
            "split.train": list(self.train_window) if self.train_window else None,
            "split.valid": list(self.valid_window) if self.valid_window else None,
            "split.test": list(self.test_window) if self.test_window else None,
        }
        return {**{k: v for k, v in named.items() if v is not None}, **self.overrides}


def check_overrides(params_file: Path, overrides: dict[str, Any]) -> None:
    """Refuse bad overrides before any stage runs, with the key path and reason a UI user can read."""
    try:
        load_params(params_file, overrides=overrides)
    except ParamsError as exc:
        raise ValueError(f"refused flow parameters {overrides}: {exc}") from None


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def mlflow_run_url(run: dict[str, str] | None) -> str | None:
    if not run:
        return None
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    base = uri if uri.startswith("http") else os.environ.get("MLFLOW_UI_URL", "http://127.0.0.1:5000")
    return f"{base.rstrip('/')}/#/experiments/{run['experiment_id']}/runs/{run['run_id']}"


def summary_markdown(summary: dict[str, Any]) -> str:
    """The run's artifact: stages, test metrics vs baseline, registered version, gate decision, MLflow link."""
    lines = ["# Training run", "", "| stage | outcome |", "|---|---|"]
    lines += [f"| {stage} | {outcome} |" for stage, outcome in summary["stages"].items()]
    metrics = summary.get("metrics")
    if metrics:
        test, base = metrics.get("test", {}), metrics.get("baseline", {})
        lines += ["", "## Test metrics", "", "| metric | model | baseline |", "|---|---|---|"]
        for key, value in test.items():
            if isinstance(value, int | float):
                other = base.get(key)
                lines.append(f"| {key} | {value:.4f} | {'' if other is None else f'{other:.4f}'} |")
        if "auc_gap_to_baseline" in metrics:
            lines.append(f"\nROC AUC gap to baseline: **{metrics['auc_gap_to_baseline']:+.4f}**")
        slices = metrics.get("slices") or {}
        if slices:
            lines += ["", "Slices: " + ", ".join(f"{k} = {v:.4f}" for k, v in slices.items() if isinstance(v, float))]
    reg = summary.get("registered")
    if reg:
        lines += [
            "",
            "## Registered model",
            "",
            f"`{reg['model_name']}` version **{reg['version']}** → alias **@{reg['alias']}**  ",
            f"model URI `{reg['model_uri']}`, data version `{reg['data_hash']}`",
        ]
    gate = summary.get("gate")
    if gate:
        decision = gate.get("decision", gate.get("promote", gate))
        lines += ["", "## Gate", "", f"decision: **{decision}**", "", f"```json\n{json.dumps(gate, indent=1)}\n```"]
    if summary.get("mlflow_run_id"):
        url = summary.get("mlflow_url")
        lines += ["", f"MLflow run: [`{summary['mlflow_run_id']}`]({url})" if url else summary["mlflow_run_id"]]
    return "\n".join(lines)


def rerun_command(overrides: dict[str, Any]) -> str:
    """The command that runs the training flow again with the same overrides."""
    items = " ".join(f"-S '{k}={v if isinstance(v, str) else json.dumps(v)}'" for k, v in overrides.items())
    return f"python -m flows.training {items}".strip()


def run_name() -> str:
    """`train` (params.yaml as it is) or `train-<what was overridden>`, e.g. train-max_epochs=1,lr=0.01."""
    from prefect.runtime import flow_run

    given = flow_run.parameters.get("params") or {}
    if isinstance(given, TrainingParams):
        given = given.model_dump()
    overrides = TrainingParams(**given).as_overrides() if given else {}
    if not overrides:
        return "train"
    shown = ",".join(
        f"{k.split('.')[-1]}={v if not isinstance(v, list | tuple) else '..'.join(map(str, v))}"
        for k, v in overrides.items()
    )
    return f"train-{shown}"[:80]


def _log_run_workspace(run: dict[str, str] | None, workspace: Path, overrides: dict[str, Any], uri: str) -> None:
    """The run's effective params.yaml and dvc.lock, and the command that repeats it, on its MLflow run."""
    if not run:
        return
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    for name in ("params.yaml", "dvc.lock"):
        if (workspace / name).exists():
            client.log_artifact(run["run_id"], str(workspace / name), artifact_path="run-workspace")
    client.set_tag(run["run_id"], "overrides", json.dumps(overrides)[:5000])
    client.set_tag(run["run_id"], "rerun", rerun_command(overrides)[:5000])


@flow(name="training", flow_run_name=run_name, log_prints=True)
def training(params: TrainingParams | None = None, project_dir: str | None = None) -> dict[str, Any]:
    """Run the dvc.yaml pipeline stage by stage through DVC (as `dvc repro`), registering and gating
    the model it trains.

    Without overrides it runs in the project and updates its dvc.lock, as `dvc repro` does. With
    overrides it runs in a run workspace (`.runs/<flow run>`, sharing the project's DVC cache and MLflow
    store): the project's params.yaml, dvc.lock and outputs stay as they are, and the run's effective
    params.yaml, dvc.lock and a re-run command are logged to its MLflow run.

    Args:
        params: overrides of params.yaml for this run only; leave empty to train with params.yaml as it is
        project_dir: the project checkout to run in (default: the runner's working directory)
    """
    logger = get_run_logger()
    project = Path(project_dir or os.getcwd()).resolve()
    params_file = project / paths.PARAMS
    overrides = (params or TrainingParams()).as_overrides()
    check_overrides(params_file, overrides)  # before any stage runs
    model_name = load_params(params_file).register_.model_name
    tags = flow_run_tags()
    uri = tracking.tracking_uri(project)
    stages: dict[str, str] = {}
    from prefect.runtime import flow_run

    with workspace_lock(model_name), synced(project, f"training {flow_run.name or ''}: dvc.lock") as published:
        where = project
        if overrides:
            label = f"{flow_run.name or 'run'}-{str(flow_run.id or uuid.uuid4())[:8]}"
            where = run_workspace(project, label, overrides)
            logger.info("overrides %s: running in %s; params.yaml is unchanged", overrides, where)
        for stage in dvc_stages.stage_order(where):
            stages[stage] = run_stage(stage, str(where), tags, tracking_uri=uri)
    run = _read_json(where / paths.TRAIN_OUT / "run.json")
    summary: dict[str, Any] = {
        "stages": stages,
        "overrides": overrides,
        "workspace": str(where),
        "rerun": rerun_command(overrides) if overrides else "dvc repro",
        "metrics": _read_json(where / paths.METRICS),
        "registered": _read_json(where / paths.REGISTERED),
        "gate": _read_json(where / GATE_REPORT),
        "mlflow_run_id": run["run_id"] if run else None,
        "mlflow_url": mlflow_run_url(run),
        "data_version": dvc_stages.locked_hash(where, str(paths.VALIDATED)),
        "published_commit": published["commit"],  # a worker's checkout (make stack): its dvc.lock, pushed
    }
    if overrides:
        _log_run_workspace(run, where, overrides, uri)
        shutil.rmtree(where, ignore_errors=True)  # everything it made is in the DVC cache and MLflow
    create_markdown_artifact(
        key="training-summary", markdown=summary_markdown(summary), description="test metrics, model, MLflow run"
    )
    if summary["mlflow_run_id"]:
        add_flow_run_tags(f"mlflow_run_id:{summary['mlflow_run_id']}")
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--project-dir", default=".", type=Path)
    ap.add_argument("--max-epochs", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--sample-frac", type=float)
    ap.add_argument("--data-end")
    ap.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. -S model.dropout=0.3")
    args = ap.parse_args(argv)
    try:
        extra = cli_overrides(args.set)
    except ParamsError as exc:
        ap.error(str(exc))
    params = TrainingParams(
        max_epochs=args.max_epochs, lr=args.lr, sample_frac=args.sample_frac, data_end=args.data_end, overrides=extra
    )
    project = args.project_dir.resolve()
    with local_prefect(project):
        summary = training(params=params, project_dir=str(project))
    print(json.dumps({k: summary[k] for k in ("stages", "mlflow_run_id", "registered")}, indent=1))


if __name__ == "__main__":
    main()
