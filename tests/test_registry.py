"""Registry writes under faults and races, on a real MLflow store: gate and rollback are safe to retry
after a failure at any write, history entries never collide, and the gate never overwrites a champion
that changed while it compared (a second writer, a real process)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from flightloop import registry
from flightloop.config import GateCfg
from tests.conftest import project_env

pytestmark = pytest.mark.smoke
NAME = "flight-delay"
WRITES = (
    "set_registered_model_tag",
    "set_model_version_tag",
    "update_model_version",
    "set_registered_model_alias",
    "delete_registered_model_alias",
)
BRIER = GateCfg(metric="brier", margin=0.0, slice_tolerance=1.0)  # the perturbed copy loses on Brier


@pytest.fixture(scope="module")
def store(small_project, tmp_path_factory):
    """A registry with v1 (trained), `worse` (v1 with every score pushed up: same ranking, worse Brier) and
    `copy` (v1 again, registered anew), and a 2,000-row labelled window; returned as a folder to copy."""
    import torch

    root = tmp_path_factory.mktemp("registry")
    shutil.copy2(small_project / "mlflow.db", root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    v1 = client.get_model_version(NAME, str(registry.alias_version(client, NAME)))
    source = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/{v1.version}", dst_path=str(root / "v1")))
    shutil.copytree(source, root / "worse")
    saved = torch.load(root / "worse" / "artifacts" / "model.pt", weights_only=True)
    bias = [k for k in saved["state_dict"] if k.endswith("bias")][-1]
    saved["state_dict"][bias] = saved["state_dict"][bias] + 1.5
    torch.save(saved, root / "worse" / "artifacts" / "model.pt")
    worse = mlflow.register_model(str(root / "worse"), NAME).version
    copy = mlflow.register_model(v1.source, NAME).version
    window = pd.read_parquet(small_project / "data" / "prepared" / "test.parquet").sample(2000, random_state=0)
    window.to_parquet(root / "window.parquet", index=False)
    (root / "versions.json").write_text(json.dumps({"v1": int(v1.version), "worse": int(worse), "copy": int(copy)}))
    return root


@pytest.fixture
def fresh(store, tmp_path, monkeypatch):
    """A copy of the store as the one this test writes to; returns the versions by role."""
    shutil.copy2(store / "mlflow.db", tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return {**json.loads((store / "versions.json").read_text()), "window": store / "window.parquet"}


class Faulty:
    """Fails the n-th registry write (any of WRITES) with an error, as a crash or a lost connection would."""

    def __init__(self, monkeypatch, fail_at: int | None):
        self.count, self.fail_at = 0, fail_at
        for name in WRITES:
            original = getattr(mlflow.MlflowClient, name)
            monkeypatch.setattr(mlflow.MlflowClient, name, self._wrap(original))

    def _wrap(self, original):
        def write(client, *args, **kwargs):
            self.count += 1
            if self.count == self.fail_at:
                raise RuntimeError(f"injected failure at registry write {self.count}")
            return original(client, *args, **kwargs)

        return write


def state() -> dict:
    client = registry.client()
    model = client.get_registered_model(NAME)
    events = registry.history(client, NAME)
    return {
        "aliases": {k: int(v) for k, v in model.aliases.items()},
        "history": [(e["action"], e["version"], e.get("champion_before"), e.get("champion_after")) for e in events],
        "tags": {v.version: {k: t for k, t in v.tags.items() if k.endswith(".action")} for v in _versions(client)},
        "lines": {v.version: len((v.description or "").splitlines()) for v in _versions(client)},
    }


def _versions(client):
    return client.search_model_versions(f"name='{NAME}'")


def gate(versions: dict, version: int, **kw):
    from tasks.gate import run_gate

    return run_gate(NAME, version, versions["window"], "late", BRIER, **kw)


def promote_worse_first(versions: dict) -> None:
    """Live: `worse`, promoted (forced) over v1, so that v1's `copy` is the better challenger."""
    gate(versions, versions["worse"], force_reason="setting the scene")


def test_the_gate_is_safe_to_retry_after_a_failure_at_every_write(fresh, monkeypatch, tmp_path):
    promote_worse_first(fresh)
    baseline = tmp_path / "baseline.db"
    shutil.copy2(tmp_path / "mlflow.db", baseline)
    counter = Faulty(monkeypatch, fail_at=None)
    done = gate(fresh, fresh["copy"])
    assert done["promoted"] and done["action"] == "promote"
    expected, writes = state(), counter.count
    assert writes >= 5 and expected["aliases"]["champion"] == fresh["copy"]
    for n in range(1, writes + 1):
        shutil.copy2(baseline, tmp_path / "mlflow.db")
        faulty = Faulty(monkeypatch, fail_at=n)
        with pytest.raises(RuntimeError, match="injected"):
            gate(fresh, fresh["copy"])
        faulty.fail_at = None  # the retry runs without faults
        again = gate(fresh, fresh["copy"])
        assert again["promoted"] and again["champion_version"] == fresh["copy"], (n, again)
        assert state() == expected, f"after a failure at write {n} of {writes}, a retry left another registry"


def test_a_rollback_is_safe_to_retry_after_a_failure_at_every_write(fresh, monkeypatch, tmp_path):
    from tasks.gate import rollback

    promote_worse_first(fresh)
    baseline = tmp_path / "baseline.db"
    shutil.copy2(tmp_path / "mlflow.db", baseline)
    counter = Faulty(monkeypatch, fail_at=None)
    rollback(NAME, "test", expect=fresh["worse"])
    expected, writes = state(), counter.count
    assert expected["aliases"]["champion"] == fresh["v1"]
    for n in range(1, writes + 1):
        shutil.copy2(baseline, tmp_path / "mlflow.db")
        faulty = Faulty(monkeypatch, fail_at=n)
        with pytest.raises(RuntimeError, match="injected"):
            rollback(NAME, "test", expect=fresh["worse"])
        faulty.fail_at = None
        event = rollback(NAME, "test", expect=fresh["worse"])  # a retry of the same rollback (Prefect retries)
        assert event["champion_after"] == fresh["v1"]
        assert state() == expected, f"after a failure at write {n} of {writes}, a retry left another registry"


WRITER = """
import sys
from flightloop import registry
c = registry.client()
for i in range(int(sys.argv[1])):
    registry.record(c, "flight-delay", {"action": "note", "version": 1, "reason": f"writer {sys.argv[2]} #{i}"})
"""


def test_two_writers_never_take_the_same_history_entry(fresh, tmp_path):
    env = project_env(tmp_path) | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    before = len(registry.history(registry.client(), NAME))
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, "15", w], env=env, cwd=Path(__file__).parents[1]) for w in "ab"
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    events = registry.history(registry.client(), NAME)[before:]
    assert sorted(e["reason"] for e in events) == sorted(f"writer {w} #{i}" for w in "ab" for i in range(15))
    assert [e["seq"] for e in events] == list(range(before + 1, before + 31))


def test_the_gate_does_not_overwrite_a_champion_changed_while_it_compared(fresh, monkeypatch, tmp_path):
    """A rollback by a second writer (another process) lands while the gate scores the models: the gate
    records that the champion changed and promotes nothing; the rollback stands."""
    import tasks.gate

    promote_worse_first(fresh)
    env = project_env(tmp_path) | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    real_score, calls = tasks.gate.score, []

    def score_while_someone_rolls_back(*args, **kwargs):
        if not calls:
            rolled = subprocess.run(
                [sys.executable, "-m", "tasks.gate", "rollback", "--reason", "second writer"],
                env=env,
                cwd=Path(__file__).parents[1],
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert rolled.returncode == 0, rolled.stderr[-2000:]
        calls.append(1)
        return real_score(*args, **kwargs)

    monkeypatch.setattr(tasks.gate, "score", score_while_someone_rolls_back)
    result = gate(fresh, fresh["copy"])
    assert not result["promoted"] and result["action"] == "refuse"
    assert f"champion changed during the gate (v{fresh['worse']} -> v{fresh['v1']})" in result["reason"]
    assert registry.alias_version(registry.client(), NAME) == fresh["v1"]  # the rollback stands
    actions = [e["action"] for e in registry.history(registry.client(), NAME)]
    assert actions[-2:] == ["rollback", "refuse"]
